"""Chemistry: embeddings from structures (RDKit, ChemBERTa) and compound classes."""
