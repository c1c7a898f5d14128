// The entry point of the Gateway API conformance suite: every option comes from the suite's own
// flags (-gateway-class, -supported-features, -report-output, ...), which `make conformance` sets.
package gwapiconformance

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
	"sigs.k8s.io/gateway-api/pkg/consts"
)

func TestGatewayAPIConformance(t *testing.T) {
	t.Logf("Gateway API conformance suite, bundle version %s", consts.BundleVersion)
	conformance.RunConformance(t)
}
