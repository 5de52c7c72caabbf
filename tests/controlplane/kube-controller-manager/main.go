// kube-controller-manager, built from Kubernetes' own module for wva's test
// cluster: Deployments, ReplicaSets, the HPA, garbage collection and
// service-account tokens run as they do in a real cluster.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
