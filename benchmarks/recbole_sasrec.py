"""RecBole 1.2.1's SASRec on ML-100K with our split, for the comparison in docs/benchmarks.md.

Same data and split as ``bench_accuracy.py``: every interaction (no rating filter), leave-one-out
in time order (last item test, second-last validation), full ranking with the user's history
excluded. RecBole's own SASRec defaults (d=64, 2 layers, 2 heads, dropout 0.5, Adam 1e-3, batch
2048, MAX_ITEM_LIST_LENGTH 50) with the cross-entropy loss, early stopping on validation NDCG@10
with RecBole's patience of 10 epochs.

RecBole 1.2.1 pins packages that no longer install (ray<=2.6.3, NumPy 1), so it runs in its own
virtual environment, set up by hand:

    python -m venv /tmp/recbole-venv
    /tmp/recbole-venv/bin/pip install pandas scipy scikit-learn pyyaml colorlog colorama tensorboard \
        texttable thop tabulate plotly psutil
    # torch, numpy and recbole itself come from the project's .venv (PYTHONPATH below);
    # ``ray`` is only imported for hyper-parameter search: an empty stub package satisfies it.
    PYTHONPATH=/tmp/recbole-stubs:.venv/lib/python3.11/site-packages \
        /tmp/recbole-venv/bin/python benchmarks/recbole_sasrec.py [--resume CHECKPOINT]

``--resume`` continues from a checkpoint RecBole saved (model, optimiser, epoch, patience counter),
so a long CPU run can be split; add the logged times of both parts for the training time.
"""
import argparse
import functools
import os
import pathlib
import time

import numpy as np
import torch

# RecBole 1.2.1 predates NumPy 2 and torch.load's weights_only default.
np.float_, np.complex_, np.unicode_ = np.float64, np.complex128, np.str_
torch.load = functools.partial(torch.load, weights_only=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resume", help="a checkpoint RecBole saved to continue from")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "2")))
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--checkpoint-dir", default="/tmp/recbole_saved")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    cfg = {
        "data_path": str(pathlib.Path(recbole.__file__).parent / "dataset_example"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["NDCG", "Recall", "MRR", "Hit"], "topk": [10, 20], "valid_metric": "NDCG@10",
        "train_neg_sample_args": None, "loss_type": "CE", "epochs": args.epochs, "stopping_step": 10,
        "device": "cpu", "use_gpu": False, "seed": 0, "reproducibility": True,
        "show_progress": False, "checkpoint_dir": args.checkpoint_dir, "log_wandb": False,
    }
    config = Config(model="SASRec", dataset="ml-100k", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    model = get_model("SASRec")(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    if args.resume:
        trainer.resume_checkpoint(args.resume)
    started = time.perf_counter()
    best_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    seconds = time.perf_counter() - started
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    print("RECBOLE_RESULT", {"fit_seconds": round(seconds, 1), "best_valid": dict(best_valid),
                             "test": dict(test)}, flush=True)


if __name__ == "__main__":
    main()
