"""
ocm-bench --cluster: a redis-server and two spawned nodes; every room's
guests join through the other node (a 307 first), and chat reaches every
reader on whichever node holds the room.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import defer, utils
from twisted.trial.unittest import TestCase

from ocm.bench.spawn import SOURCE_ROOT, child_env
from tests.redis import redis_server_path
from tests.test_bench import SMALL, assert_clean_run


class ClusterBenchTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_two_nodes(self):
        redis_server_path(self)  # skip (or fail under CI) without redis-server
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "ocm.bench", "--cluster", "2", "--json", *SMALL],
            env=child_env(), path=SOURCE_ROOT,
        )
        self.assertEqual(code, 0, err.decode())
        result = json.loads(out)
        assert_clean_run(self, result)
        self.assertEqual(result["server"], "ocm x2")
        # 3 rooms x 2 guests, each sent on by the node it asked.
        self.assertEqual((result["joins"]["nodes"], result["joins"]["redirects"]), (2, 6))
        self.assertEqual(result["load"]["workers"], 2)  # one generator per node's UDP port
