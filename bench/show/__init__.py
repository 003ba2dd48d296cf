"""How results are shown: the files a run writes, summary.md and the plots."""
