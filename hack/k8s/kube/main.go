// One program for the six Kubernetes components the local cluster runs (kube-apiserver,
// kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl), chosen by the
// name it is started under: the cache holds one file and six hard links to it. The
// components share most of their packages, so one link step replaces six; on a fresh
// two-core machine the six links took minutes of the cold build (docs/localcluster.md).
//
// Each entry calls the component's own command constructor, as its upstream main does.
// `kube <component> [args]` runs one by name too (for a shell without the links).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // the version metric
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's client auth plugins
	_ "time/tzdata"                             // CronJob time zones in the controller-manager
)

// servers are the long-running components: cobra commands run by cli.Run.
var servers = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler": func() *cobra.Command {
		return scheduler.NewSchedulerCommand()
	},
	"kubelet": func() *cobra.Command {
		return kubelet.NewKubeletCommand(context.Background())
	},
	"kube-proxy": proxy.NewProxyCommand,
}

func runKubectl() {
	// As upstream's main: the verbosity is set before the command is built, since
	// building it (plugins, .kuberc) already logs.
	logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := kubectl.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
}

func names() []string {
	all := []string{"kubectl"}
	for name := range servers {
		all = append(all, name)
	}
	sort.Strings(all)
	return all
}

func main() {
	name := filepath.Base(os.Args[0])
	if name == "kube" && len(os.Args) > 1 {
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	if name == "kubectl" {
		runKubectl()
		return
	}
	build, ok := servers[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "kube: run me as one of %v (a link named so, or `kube <name>`)\n", names())
		os.Exit(2)
	}
	os.Exit(cli.Run(build()))
}
