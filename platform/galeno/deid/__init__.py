"""De-identification of Spanish clinical text (issue 24): high-recall rules for structured
identifiers (:mod:`galeno.deid.rules`), to be combined with a MEDDOCAN-trained NER model."""
