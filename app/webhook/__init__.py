"""The HTTP edge and one admission's glue: TLS server, AdmissionReview parsing and rendering,
the admission flow (skip, look up, place, evaluate, answer), patches, the decision memo and log.
"""
