"""The bundled stdio client, ocm-client."""
