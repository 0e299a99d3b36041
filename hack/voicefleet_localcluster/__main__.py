"""`python -m voicefleet_localcluster` = `voicefleet-cluster` (how `up` starts the kubelet)."""

import sys

from voicefleet_localcluster.cli import main

sys.exit(main())
