#!/usr/bin/env python3
"""A reverse proxy on loopback that adds `Authorization: Bearer <token>` to every request.

The MCP conformance suite (scripts/mcp-conformance.sh) connects without credentials, while
Conclave's /mcp needs an agent's bearer token. Everything else passes through unchanged, `Host`
and `Origin` included (the suite's DNS-rebinding scenario sends hostile ones on purpose). A
response with a length is forwarded whole; one without (an event stream) is forwarded chunk by
chunk as it arrives.

Usage: mcp-bearer-proxy.py UPSTREAM_URL TOKEN PORT_FILE
  Listens on 127.0.0.1 on a free port and writes that port to PORT_FILE once listening.
Standard library only.
"""

import http.client
import http.server
import sys
import urllib.parse

# Hop-by-hop headers (RFC 9110 section 7.6.1) are the proxy's own business on each side.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


def make_handler(upstream, token):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            sys.stderr.write("proxy: " + (format % args) + "\n")

        def forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {}
            for name, value in self.headers.items():
                lower = name.lower()
                if lower in HOP_BY_HOP or lower in ("authorization", "content-length"):
                    continue
                # A repeated header (Accept, say) is joined as HTTP allows.
                headers[name] = headers[name] + ", " + value if name in headers else value
            headers["Authorization"] = "Bearer " + token
            if body is not None:
                headers["Content-Length"] = str(len(body))
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            try:
                # A `Host` among the headers is sent as given (http.client then adds none).
                connection.request(self.command, upstream.path.rstrip("/") + self.path, body, headers)
                response = connection.getresponse()
                self.send_response_only(response.status, response.reason)
                bodiless = self.command == "HEAD" or response.status in (204, 304)
                streamed = not bodiless and response.getheader("Content-Length") is None
                for name, value in response.getheaders():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                if streamed:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if not streamed:
                    body = response.read()
                    if not bodiless:
                        self.wfile.write(body)
                    return
                while True:
                    chunk = response.read1(65536)
                    if not chunk:
                        break
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (OSError, http.client.HTTPException) as error:
                self.log_message("upstream failed: %s", error)
                self.close_connection = True
            finally:
                connection.close()

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = do_HEAD = forward

    return Handler


def main():
    if len(sys.argv) != 4:
        sys.stderr.write(__doc__)
        sys.exit(2)
    upstream = urllib.parse.urlsplit(sys.argv[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(upstream, sys.argv[2]))
    with open(sys.argv[3], "w") as port_file:
        port_file.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
