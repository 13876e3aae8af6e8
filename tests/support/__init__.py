"""Helpers every test suite shares: bus messages, waiting, the processes a test starts."""
