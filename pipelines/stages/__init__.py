"""One thin module per command on one runner (`stages.runner`): typed config in, logging,
tracking, exit codes and summaries at the edges, the work in the layers below."""
