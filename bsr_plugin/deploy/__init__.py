"""Deploy: what a trained binarized network becomes. The packed file format and its network
builders (``packed``, ``file_format``, ``builders``), the bit-packed XNOR-popcount CPU engine
(``engine``), ONNX export, image I/O and tiled inference (``inference``) and the ``bsr``
command (``cli``). Uses the core, conversion and analysis layers; never a toolkit directly
(a packed file's builder loads one by name)."""
