"""Read files into typed records, validate them, split them, tokenize them."""
