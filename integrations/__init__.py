"""Vector-database integrations (installed as ``safeclip_sdk.integrations``)."""
