"""A synthetic web-analytics export: one row per session, in the layout of
`conf/data/web_analytics.yaml` (the columns of the public "Online Shoppers Purchasing Intention"
data), with a purchase flag that depends on page value, product pages and visitor type.

It lets a reader try `data=web_analytics` (cross-validation, calibration, a binary label, no
session id or journey) without downloading anything: a notebook, a benchmark and the tests use it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MONTHS = ("Feb", "Mar", "May", "June", "Jul", "Aug", "Oct", "Nov", "Dec")
VISITORS = ("Returning_Visitor", "New_Visitor", "Other")


def web_analytics_export(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """`n` sessions, seeded. A purchase (`Revenue`) is drawn with log-odds
    -2.5 + 0.12 PageValues + 0.02 ProductRelated + 0.6 (new visitor), so a model can learn it
    and no model can be sure of it."""
    rng = np.random.default_rng(seed)
    admin = rng.poisson(2, n)
    info = rng.poisson(0.5, n)
    product = rng.poisson(20, n)
    page_values = np.where(rng.random(n) < 0.25, rng.gamma(2, 15, n), 0.0)
    visitor = rng.choice(list(VISITORS), n, p=[0.8, 0.18, 0.02])
    logit = -2.5 + 0.12 * page_values + 0.02 * product + 0.6 * (visitor == "New_Visitor")
    revenue = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "Administrative": admin,
            "Administrative_Duration": admin * rng.gamma(2, 30, n),
            "Informational": info,
            "Informational_Duration": info * rng.gamma(2, 20, n),
            "ProductRelated": product,
            "ProductRelated_Duration": product * rng.gamma(2, 25, n),
            "BounceRates": rng.beta(1, 30, n),
            "ExitRates": rng.beta(2, 30, n),
            "PageValues": page_values,
            "SpecialDay": rng.choice([0.0, 0.2, 0.6, 1.0], n, p=[0.9, 0.04, 0.03, 0.03]),
            "Month": rng.choice(list(MONTHS), n),
            "OperatingSystems": rng.integers(1, 5, n),
            "Browser": rng.integers(1, 8, n),
            "Region": rng.integers(1, 10, n),
            "TrafficType": rng.integers(1, 15, n),
            "VisitorType": visitor,
            "Weekend": rng.random(n) < 0.23,
            "Revenue": revenue,
        }
    )
