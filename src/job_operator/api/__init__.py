"""`job-operator api`: the seed's "reschedule a job" operation over HTTP.

A stateless server in front of the Kubernetes API: the caller's bearer token makes
the write (the reschedule annotations), so Kubernetes RBAC decides who may; the
server's own identity only reads Jobs, to find them and to see the operator's outcome.
See docs/api.md.
"""
