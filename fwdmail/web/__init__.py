"""The account side over HTTP: aiohttp on the daemon's own loop serving the JSON API (`/v1`) and
`/healthz`. It calls `app` as the CLI does; every request is one row of the 30-day request log."""
