// Command celcost measures what the API server's validation of one custom resource costs,
// with the API server's own code (the k8s.io/apiextensions-apiserver pinned in ../go.mod):
// the OpenAPI schema validator and the CEL rules (x-kubernetes-validations) of a CRD's
// first version, each run 2,000 times per object file.
//
//	cd hack/k8s && go run ./celcost ../../crds/ttsvoices.yaml ../../crds/samples/*.yaml
//
// CPUPROFILE=prefix writes a CPU profile of the CEL loop per object file
// (prefix.<file name>; `go tool pprof -top` reads it). See docs/operator.md, "Where
// `kubectl apply`'s time goes".
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

const rounds = 2000

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "celcost:", err)
		os.Exit(1)
	}
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: celcost CRD.yaml OBJECT.yaml...")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	must(err)
	crd := &apiextensionsv1.CustomResourceDefinition{}
	must(yaml.Unmarshal(raw, crd))
	internal := &apiextensions.JSONSchemaProps{}
	must(apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(
		crd.Spec.Versions[0].Schema.OpenAPIV3Schema, internal, nil))
	structural, err := structuralschema.NewStructural(internal)
	must(err)
	t0 := time.Now()
	rules := cel.NewValidator(structural, true, celconfig.PerCallLimit)
	fmt.Printf("CEL rules compiled in %v (none: %v)\n", time.Since(t0), rules == nil)
	schema, _, err := apiservervalidation.NewSchemaValidator(internal)
	must(err)
	for _, path := range os.Args[2:] {
		objRaw, err := os.ReadFile(path)
		must(err)
		// As the API server holds it: JSON numbers as int64 where they are integers.
		asJSON, err := yaml.YAMLToJSON(objRaw)
		must(err)
		u := &unstructured.Unstructured{}
		must(u.UnmarshalJSON(asJSON))
		obj := u.Object
		start := time.Now()
		for i := 0; i < rounds; i++ {
			if errs := apiservervalidation.ValidateCustomResource(nil, obj, schema); len(errs) > 0 && i == 0 {
				fmt.Println("schema refuses it:", errs)
			}
		}
		schemaPer := time.Since(start) / rounds
		var celPer time.Duration
		if rules != nil {
			if prefix := os.Getenv("CPUPROFILE"); prefix != "" {
				f, err := os.Create(prefix + "." + filepath.Base(path))
				must(err)
				must(pprof.StartCPUProfile(f))
			}
			start = time.Now()
			for i := 0; i < rounds; i++ {
				errs, _ := rules.Validate(context.Background(), field.NewPath(""), structural, obj, nil, celconfig.RuntimeCELCostBudget)
				if len(errs) > 0 && i == 0 {
					fmt.Println("CEL refuses it:", errs)
				}
			}
			celPer = time.Since(start) / rounds
			pprof.StopCPUProfile()
		}
		fmt.Printf("%s: schema validation %v, CEL rules %v per object\n", path, schemaPer, celPer)
	}
}
