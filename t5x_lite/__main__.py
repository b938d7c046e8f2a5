from t5x_lite.cli.main import run

run()
