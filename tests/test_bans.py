"""ocm.server.bans: the operator's daemon-wide address bans."""

from twisted.trial.unittest import SynchronousTestCase

from ocm.server.bans import AddressBans, BanError


class AddressBanTests(SynchronousTestCase):
    def test_a_ban_ends(self):
        bans = AddressBans()
        bans.ban("10.0.0.5", 60, now=100)
        self.assertTrue(bans.banned("10.0.0.5", 159))
        self.assertFalse(bans.banned("10.0.0.6", 120))
        self.assertFalse(bans.banned("10.0.0.5", 160))
        self.assertEqual(len(bans), 0)

    def test_ipv6_by_slash_64_and_mapped_ipv4(self):
        bans = AddressBans()
        self.assertEqual(bans.ban("2001:db8:1:2::9", 60, now=0), "2001:db8:1:2::/64")
        self.assertTrue(bans.banned("2001:db8:1:2:ffff::1", 1))
        self.assertFalse(bans.banned("2001:db8:1:3::1", 1))
        bans.ban("::ffff:192.0.2.7", 60, now=0)
        self.assertTrue(bans.banned("192.0.2.7", 1))

    def test_bounded_and_checked(self):
        bans = AddressBans(max_bans=2)
        bans.ban("10.0.0.1", 10, now=0)
        bans.ban("10.0.0.2", 100, now=0)
        with self.assertRaises(BanError):
            bans.ban("10.0.0.3", 10, now=5)
        bans.ban("10.0.0.3", 10, now=20)  # the first one expired: room again
        for bad in ("example.org", "", "10.0.0.300"):
            with self.assertRaises(BanError):
                bans.ban(bad, 10, now=0)
        with self.assertRaises(BanError):
            bans.ban("10.0.0.9", 0, now=0)
        self.assertTrue(bans.unban("10.0.0.3"))
        self.assertEqual(set(bans.active(21)), {"10.0.0.2"})
