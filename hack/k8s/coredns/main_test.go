package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
)

// upstream is CoreDNS's own directive order (its plugin.cfg), as the pinned release ships
// it: main() has not replaced it when tests run.
var upstream = slices.Clone(dnsserver.Directives)

func TestDirectivesKeepUpstreamOrder(t *testing.T) {
	last := -1
	for _, name := range directives {
		at := slices.Index(upstream, name)
		if at < 0 {
			t.Fatalf("%q is not a directive of the pinned CoreDNS", name)
		}
		if at <= last {
			t.Fatalf("%q comes before %q upstream; a plugin order upstream does not have",
				name, upstream[last])
		}
		last = at
	}
}

func TestEveryDirectiveIsRegisteredAndEveryPluginListed(t *testing.T) {
	for _, name := range directives {
		if _, err := caddy.DirectiveAction("dns", name); err != nil {
			t.Errorf("directive %q: %v (its plugin is not imported)", name, err)
		}
	}
	for _, plugin := range caddy.ListPlugins()["others"] {
		name, ok := strings.CutPrefix(plugin, "dns.")
		if ok && !slices.Contains(directives, name) {
			t.Errorf("plugin %q is linked but no directive enables it", name)
		}
	}
}
