"""Pretrained reference recognizers lowres does not train, swept next to the ones it does.

Each one is an optional extra and a Python factory for the ``py:`` external kind
(:mod:`lowres.external`): ``--models 'py:lowres.reference.dlib:recognizer(size=112x92)'``.
"""
