"""Fit a classifier on the iris data set that ships with scikit-learn, and save it."""

import argparse
import json
import os

import joblib
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

parser = argparse.ArgumentParser()
parser.add_argument("--n-estimators", type=int, default=100)
args = parser.parse_args()

X, y = load_iris(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
model = RandomForestClassifier(n_estimators=args.n_estimators, random_state=0)
model.fit(X_train, y_train)
accuracy = model.score(X_test, y_test)

os.makedirs("models", exist_ok=True)
joblib.dump(model, "models/model.joblib")
with open("models/metrics.json", "w") as f:
    json.dump({"accuracy": accuracy, "n_estimators": args.n_estimators}, f)
print(f"test accuracy {accuracy:.3f}; model saved to models/model.joblib")
