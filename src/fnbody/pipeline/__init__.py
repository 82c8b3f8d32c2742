"""`fnbody run`: the report's whole pipeline as cached, resumable stages, and the report it writes."""
