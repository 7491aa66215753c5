"""filtered: cleaners that edit rows (encoding, HTML residue, PII, whitespace) and filters that drop
them with a reason (quality heuristics, language, policy and licences), run by one runner."""
