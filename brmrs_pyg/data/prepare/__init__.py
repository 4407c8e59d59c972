r"""Raw data -> MMRec dataset folders: the Amazon pipeline (:mod:`.amazon`), the converter of
own data (:mod:`.convert`), their shared steps (:mod:`.interactions`, :mod:`.writer`) and the
``run.py prepare`` command line (:mod:`.cli`)."""
