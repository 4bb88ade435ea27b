r"""kNN accuracy of a pretrained backbone (k=200, T=0.2, cosine, weighted vote; docs/recipe.md).

  python scripts/knn_eval.py --pretrained PATH --train_dir A --val_dir B --image_size 32
  python scripts/knn_eval.py --pretrained PATH --dataset cifar10 --image_size 32
  python scripts/knn_eval.py --flagfile configs/quickstart_knn.cfg  # the quickstart's model

PATH is a .keras SimSiam/backbone file, an exported SavedModel backbone or a workdir. Features of
the evaluation views (resize + centre crop), in batches; similarities in chunks. The last
printed line is one JSON object with `knn_top1`.
"""

from simsiam_keras import commands

if __name__ == "__main__":
    commands.knn_eval()  # simsiam_keras/commands.py: flags from the config, then apps.knn_eval.run
