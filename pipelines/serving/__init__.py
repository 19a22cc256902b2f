"""Real-time scoring: the ASGI app in MLflow's `/invocations` format (`app`), micro-batching with
admission control (`batcher`) and the served model following a registry alias (`follower`).
Reaches MLflow only through `pipelines.tracking`; imports no Hydra."""
