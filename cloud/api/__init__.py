"""API v1 of the cloud service; `create_app` lives in `cloud.api.app`."""
