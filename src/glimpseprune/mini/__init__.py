"""The embedded mini model: a small Qwen2.5-VL pretrained from scratch on glimpse-shapes (``pretrain``), and the
helpers shared by its recipe, its evaluation and ``glimpseprune demo``."""
