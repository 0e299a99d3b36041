// The local node's NetworkPolicy firewall: kube-router's network policy controller alone.
//
// Upstream's main (cmd/kube-router) links all of kube-router's controllers: BGP routing
// (gobgp and its gRPC API), the IPVS service proxy, the load-balancer allocator and the
// AWS and Docker clients they use. The node runs only the firewall (kube-proxy is the
// Service proxy, the CNI bridge the pod network), so this main wires the same pieces
// kube-router's own Run wires for --run-firewall: the health server, the pod, namespace
// and NetworkPolicy informers, and the controller, with kube-router's own flags.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/cloudnativelabs/kube-router/v2/pkg/controllers/netpol"
	"github.com/cloudnativelabs/kube-router/v2/pkg/healthcheck"
	"github.com/cloudnativelabs/kube-router/v2/pkg/options"
	"github.com/cloudnativelabs/kube-router/v2/pkg/version"
	"github.com/spf13/pflag"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "%s\n", err)
		os.Exit(1)
	}
}

func run() error {
	klog.InitFlags(nil)
	config := options.NewKubeRouterConfig()
	config.AddFlags(pflag.CommandLine)
	pflag.Parse()
	if err := flag.CommandLine.Parse(nil); err != nil { // klog's flags count as parsed
		return err
	}
	if err := flag.Set("logtostderr", "true"); err != nil {
		return err
	}
	if err := flag.Set("v", config.VLevel); err != nil {
		return err
	}
	if config.HelpRequested {
		pflag.Usage()
		return nil
	}
	if config.Version {
		version.PrintVersion(false)
		return nil
	}
	if !config.RunFirewall || config.RunRouter || config.RunServiceProxy ||
		config.RunLoadBalancer || config.MetricsPort != 0 || config.CleanupConfig {
		return fmt.Errorf("this kube-router build is the firewall only: pass --run-firewall=true " +
			"--run-router=false --run-service-proxy=false --metrics-port=0 (no --cleanup-config)")
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("kube-router needs root to run iptables and ipset")
	}
	version.PrintVersion(true)

	restConfig, err := clientcmd.BuildConfigFromFlags(config.Master, config.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	heartbeats := make(chan *healthcheck.ControllerHeartbeat, 10)
	health, err := healthcheck.NewHealthController(config)
	if err != nil {
		return fmt.Errorf("health controller: %w", err)
	}
	wg.Add(1)
	go health.RunServer(stop, &wg)

	factory := informers.NewSharedInformerFactory(client, 0)
	pods := factory.Core().V1().Pods().Informer()
	namespaces := factory.Core().V1().Namespaces().Informer()
	policies := factory.Networking().V1().NetworkPolicies().Informer()
	factory.Start(stop)
	synced := make(chan struct{})
	go func() {
		factory.WaitForCacheSync(stop)
		close(synced)
	}()
	select {
	case <-synced:
	case <-time.After(config.CacheSyncTimeout):
		return fmt.Errorf("informer caches not synced after %s", config.CacheSyncTimeout)
	}
	health.SetAlive()
	wg.Add(1)
	go health.RunCheck(heartbeats, stop, &wg)

	var ipsetMutex sync.Mutex
	iptables, ipsets, err := netpol.NewIPTablesHandlers(config)
	if err != nil {
		return fmt.Errorf("iptables handlers: %w", err)
	}
	controller, err := netpol.NewNetworkPolicyController(client, config, pods, policies,
		namespaces, &ipsetMutex, iptables, ipsets)
	if err != nil {
		return fmt.Errorf("network policy controller: %w", err)
	}
	if _, err := pods.AddEventHandler(controller.PodEventHandler); err != nil {
		return err
	}
	if _, err := namespaces.AddEventHandler(controller.NamespaceEventHandler); err != nil {
		return err
	}
	if _, err := policies.AddEventHandler(controller.NetworkPolicyEventHandler); err != nil {
		return err
	}
	wg.Add(1)
	go controller.Run(heartbeats, stop, &wg)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
	klog.Info("shutting down the network policy controller")
	close(stop)
	wg.Wait()
	close(heartbeats)
	return nil
}
