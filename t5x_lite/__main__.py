from t5x_lite.main import run

run()
