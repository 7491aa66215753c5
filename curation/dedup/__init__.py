"""deduped: exact duplicates, near duplicates (MinHash LSH verified by exact Jaccard), repeated
paragraphs and boilerplate inside rows, same-prompt conflicts, and the clusters that record them."""
