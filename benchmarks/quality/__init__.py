"""Image quality under 2:4 activation pruning, measured on the yardstick (``lynx_compile.yardstick``):
a text-to-image DiT trained here on procedurally generated scenes, graded by an evaluator trained on
the same generator."""
