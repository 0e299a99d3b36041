// The local cluster's DNS server: CoreDNS's own program (coremain) with only the plugins
// a cluster DNS server uses, instead of upstream's main, which links every plugin it
// ships (Route 53, Azure, Cloud DNS, Nomad, Datadog tracing, QUIC, gRPC, ...) and so
// spends most of its cold build compiling cloud SDKs the node never calls.
//
// Corefile directives run in the order of `directives` below, not the order they are
// written in: a plugin sees a query only after every plugin above it. The list keeps
// upstream's relative order (its plugin.cfg); main_test.go checks that it does, and that
// every directive named here has a registered setup.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// Each import registers one plugin's directive with CoreDNS's plugin registry.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/debug"
	_ "github.com/coredns/coredns/plugin/dnstap"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metadata"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/rewrite"
	_ "github.com/coredns/coredns/plugin/transfer"
)

// directives: what the local cluster's Corefile uses (errors, health, ready, kubernetes,
// cache; see hack/voicefleet_localcluster/node.py) and what kubeadm's default Corefile
// adds (prometheus, forward, loop, reload, loadbalance), plus log, bind, hosts and
// rewrite, the usual edits to a cluster's Corefile. metadata, debug, dnstap and transfer
// are linked anyway (kubernetes, forward, cache and log import them), so they are
// usable too.
var directives = []string{
	"metadata",
	"reload",
	"bind",
	"debug",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"dnstap",
	"loadbalance",
	"rewrite",
	"cache",
	"transfer",
	"hosts",
	"kubernetes",
	"loop",
	"forward",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
