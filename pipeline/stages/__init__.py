"""Pipeline stages: prepare, tokenize, train, evaluate (DESIGN.md section 5)."""
