"""The container's healthcheck: any HTTP answer from the MCP endpoint (a bare GET is
refused with 4xx) means the server serves."""

import sys
import urllib.error
import urllib.request

try:
    urllib.request.urlopen("http://127.0.0.1:3002/mcp", timeout=2)  # noqa: S310 - fixed loopback URL
except urllib.error.HTTPError:
    sys.exit(0)
except OSError:
    sys.exit(1)
