"""Did it get worse: the decision rule, comparing two runs, and the same-job gate."""
