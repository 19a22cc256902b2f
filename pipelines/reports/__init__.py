"""What people read: plots and the marketer's HTML report. Matplotlib only; no MLflow."""
