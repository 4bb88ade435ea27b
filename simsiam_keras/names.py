"""The names of the library's choices, for the modules that use them and the flags that offer them.

Plain tuples, no TensorFlow and no Keras: `config` builds its flags' choices from them before
TensorFlow is imported.
"""

BACKBONES = ("resnet18", "resnet18_cifar", "resnet50")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("none", "float16", "bfloat16")
AUGMENT_IMPLS = ("simsiam_keras", "kerascv")
