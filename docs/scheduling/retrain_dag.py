"""A minimal Airflow DAG for `micromoment retrain` (Airflow 2.x or 3.x).

The job locks itself, checks the tracking server first, and reuses a version it already trained
on the same window, so a retry is always safe. Its exit code tells Airflow what happened: 0 is
success (promoted or kept); any other code fails the task, and the log says why (3 bad or empty
data, 4 tracking server unreachable, 5 gate evaluation failed, 6 another retrain still running).
"""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(
    dag_id="micromoment_retrain",
    schedule="0 3 * * 1",  # Mondays 03:00
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=15)},
    tags=["micromoment"],
) as dag:
    BashOperator(
        task_id="retrain",
        # MLFLOW_TRACKING_URI (without credentials: micromoment refuses a password inside a
        # URI) and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD come from the worker's
        # environment or an Airflow connection; never put credentials in the command line.
        bash_command=(
            "cd /opt/micromoment && "
            ".venv/bin/micromoment retrain "
            "data.path=/data/sessions retrain.window_days=28 "
            "retrain.summary_path=/var/log/micromoment/retrain_summary.json "
            "retrain.lock_path=/var/run/micromoment/retrain.lock"
        ),
        append_env=True,
        execution_timeout=timedelta(hours=2),
    )
