"""
The plugin-built daemon with its IRC listener, as a process for the IRC
end-to-end tests: C{python -m tests.irc_daemon LOGFILE IRC-ENDPOINT
[twistd ocm options]}. Used only while ocm.server.tap has no C{--irc} of its
own; once it has, the tests run C{twistd ocm --irc} instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from ocm.irc import listener as irc
from ocm.server import tls
from ocm.server.tap import Options, makeService


def main(argv: list[str]) -> None:
    logfile, endpoint, *args = argv
    options = Options()
    options.parseOptions(args)
    config = {
        "irc": endpoint, "irc-no-tls": False, "irc-max-connections": 100,
        "irc-max-per-address": 50, "irc-playback": 50, "interface": "127.0.0.1",
    }
    irc.check_options(config)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(open(logfile, "a", encoding="utf-8"))])
    svc = makeService(options, environ={})
    data = Path(options["data-dir"])
    cert, key = (data / "server.pem").read_bytes(), (data / "server.key").read_bytes()
    listener, _ = irc.make_listener(
        config, svc.desk, reactor, tls.server_options(cert, key), tls.pem_fingerprint(cert)
    )
    listener.setServiceParent(svc)
    svc.chat_listeners.append(listener)  # stopped with the other chat listeners
    svc.privilegedStartService()
    svc.startService()
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
