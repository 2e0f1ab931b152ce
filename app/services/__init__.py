"""Domain services: verbs over the runtime (`enroll_subject`, `verify_probe`, ...).

They know nothing of HTTP: they take plain values and a `Principal`, raise `app.errors`, and
return dataclasses the API turns into responses.
"""
