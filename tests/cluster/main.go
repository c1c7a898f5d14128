// Command k8s-testbin is a multi-call binary holding the control plane that microgate's tests,
// demo and benchmarks run on loopback (etcd, kube-apiserver, kube-controller-manager) and a
// kubectl of the same version, so the client never lags the server it talks to.
//
// Each part still runs as its own process (the first argument picks which one): the apiserver and
// the controller manager both register process-global state (feature gates, klog flags) and are
// only tested upstream one per process. Linking them into one binary keeps one build, one cache
// and one version pin, and etcd always matches the client version Kubernetes pins.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	kubeapiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kubecontrollermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

const usage = "usage: k8s-testbin etcd|kube-apiserver|kube-controller-manager|kubectl [args...]"

func main() {
	name, args := filepath.Base(os.Args[0]), os.Args[1:]
	if name == "k8s-testbin" {
		if len(args) == 0 {
			fmt.Fprintln(os.Stderr, usage)
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	switch name {
	case "etcd":
		etcdmain.Main(append([]string{"etcd"}, args...))
	case "kube-apiserver":
		command := kubeapiserver.NewAPIServerCommand()
		command.SetArgs(args)
		os.Exit(cli.Run(command))
	case "kube-controller-manager":
		command := kubecontrollermanager.NewControllerManagerCommand()
		command.SetArgs(args)
		os.Exit(cli.Run(command))
	case "kubectl":
		// kubectl reads os.Args itself (verbosity, plugins), so it must see its own name first.
		os.Args = append([]string{"kubectl"}, args...)
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) // nolint:errcheck
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown component %q\n%s\n", name, usage)
		os.Exit(2)
	}
}
