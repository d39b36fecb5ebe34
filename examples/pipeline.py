"""The classic ML pipeline as shoal tasks: load -> preprocess -> train -> evaluate.

Each step is a plain function over pandas and scikit-learn. ``pipeline(remote=True)``
runs them as shoal tasks (the shards load and preprocess in parallel, and each
step's ObjectRefs feed the next one without a round trip through the driver);
``pipeline(remote=False)`` calls the very same functions in this process. The data
are generated from fixed seeds, so both give exactly the same accuracy.

    python examples/pipeline.py                  # a local cluster inside this process
    python examples/pipeline.py --address auto   # the cluster `shoal up` started
    python examples/pipeline.py --address HOST:PORT

With SHOAL_ADDRESS set, plain ``shoal.init()`` (no ``--address``) connects to that
cluster too. A running cluster's workers need numpy, pandas and scikit-learn.
"""

import argparse

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

import shoal

NUM_SHARDS = 4
NUM_TRAIN_SHARDS = 3  # the rest are held out for evaluation
ROWS_PER_SHARD = 2_000
RAW = ["x0", "x1", "x2", "x3"]
FEATURES = RAW + ["x0_x1"]
# How the data are made: features on different scales (so standardizing
# matters) whose standardized values set the label's log-odds, with an
# interaction term a linear model only learns from an engineered feature.
MEANS, SCALES = np.array([0.0, 5.0, -3.0, 10.0]), np.array([1.0, 2.0, 1.0, 4.0])
WEIGHTS, INTERACTION = np.array([1.5, -2.0, 0.0, 0.7]), 1.2


def load(shard: int) -> pd.DataFrame:
    """One shard of a noisy binary classification problem, from its own seed."""
    rng = np.random.default_rng(seed=shard)
    z = rng.standard_normal((ROWS_PER_SHARD, len(RAW)))
    log_odds = z @ WEIGHTS + INTERACTION * z[:, 0] * z[:, 1]
    df = pd.DataFrame(MEANS + SCALES * z, columns=RAW)
    df["label"] = (log_odds + rng.logistic(size=ROWS_PER_SHARD) > 0).astype(int)
    return df


def fit_scaler(*shards: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation of every raw feature over all shards, so
    every shard is scaled the same way (per-shard statistics would not be)."""
    raw = pd.concat(shards)[RAW]
    return pd.DataFrame({"mean": raw.mean(), "std": raw.std()})


def preprocess(df: pd.DataFrame, scaler: pd.DataFrame) -> pd.DataFrame:
    """Standardizes a shard and adds the interaction feature."""
    out = (df[RAW] - scaler["mean"]) / scaler["std"]
    out["x0_x1"] = out["x0"] * out["x1"]
    out["label"] = df["label"]
    return out


def train(*shards: pd.DataFrame) -> LogisticRegression:
    data = pd.concat(shards)
    return LogisticRegression(random_state=0).fit(data[FEATURES], data["label"])


def evaluate(model: LogisticRegression, *shards: pd.DataFrame) -> float:
    data = pd.concat(shards)
    return float(model.score(data[FEATURES], data["label"]))


# The same functions as shoal tasks. Defining them needs no cluster yet.
TASKS = {fn: shoal.remote(fn) for fn in (load, fit_scaler, preprocess, train, evaluate)}


def pipeline(remote: bool) -> float:
    """The accuracy on the held-out shards; ``remote`` runs every step as a task."""

    def step(fn, *args):
        # A task returns an ObjectRef at once; passing refs on lets the
        # cluster run each step as soon as its inputs exist.
        return TASKS[fn].remote(*args) if remote else fn(*args)

    raw = [step(load, i) for i in range(NUM_SHARDS)]
    scaler = step(fit_scaler, *raw)
    shards = [step(preprocess, s, scaler) for s in raw]
    model = step(train, *shards[:NUM_TRAIN_SHARDS])
    accuracy = step(evaluate, model, *shards[NUM_TRAIN_SHARDS:])
    return shoal.get(accuracy) if remote else accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help='a running cluster: "auto" or HOST:PORT (default: a local one)')
    args = parser.parse_args()
    shoal.init(address=args.address)
    try:
        print(f"accuracy as shoal tasks: {pipeline(remote=True)}")
    finally:
        shoal.shutdown()
    print(f"accuracy in-process:     {pipeline(remote=False)}")


if __name__ == "__main__":
    main()
