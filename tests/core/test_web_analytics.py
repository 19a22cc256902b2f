"""The synthetic web-analytics export: the layout its dataset config maps, seeded, learnable."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from pipelines.core.contract import DatasetSpec, to_contract
from pipelines.core.web_analytics import web_analytics_export
from tests.conftest import compose_config


def test_it_has_every_column_the_web_analytics_config_maps_and_passes_the_contract():
    data = compose_config("train", ["data=web_analytics", "data.path=x.csv", "output_dir=/tmp"])[
        "data"
    ]
    spec = DatasetSpec.from_config(data)
    export = web_analytics_export(300, seed=1)
    assert set(spec.input_columns(with_label=True)) <= set(export.columns)
    result = to_contract(export, spec, source="export.csv", with_label=True)
    assert len(result.sessions) == 300 and not result.reasons
    assert set(result.sessions["label"]) == {"no_purchase", "purchase"}


def test_it_is_seeded():
    pd.testing.assert_frame_equal(web_analytics_export(50, 3), web_analytics_export(50, 3))
    assert not web_analytics_export(50, 3).equals(web_analytics_export(50, 4))


def test_the_purchase_follows_the_stated_log_odds():
    export = web_analytics_export(200_000, seed=0)  # standard errors: about 0.001 to 0.02
    X = np.column_stack(
        [
            export["PageValues"],
            export["ProductRelated"],
            export["VisitorType"] == "New_Visitor",
        ]
    )
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(X, export["Revenue"])
    gap = np.abs(fit.coef_[0] - [0.12, 0.02, 0.6])
    assert (gap <= [0.006, 0.004, 0.06]).all(), fit.coef_
    assert abs(fit.intercept_[0] - (-2.5)) < 0.1
