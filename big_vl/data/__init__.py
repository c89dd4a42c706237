"""Input pipeline: data sources, preprocessing ops and tokenizers."""
