"""Named-entity recognition: data readers, BIO tagging, subword alignment and entity metrics."""
