// Command controlplane is the upstream apiextensions-apiserver (the Kubernetes API
// server for CustomResourceDefinitions) made usable on its own, without
// kube-aggregator in front of it, for job-operator's tests, demo and benchmarks.
//
// It builds the stock server exactly as upstream's command does and adds what
// the stock server leaves to the aggregator and to kube-apiserver:
//   - the group list at /apis (from the CRD informer) and core discovery at /api,
//     /api/v1 (namespaces and events), which kubectl and kopf need;
//   - small in-memory stores for core v1 namespaces and events, so clients can
//     create namespaces and post events, and tests can list those events;
//   - the CRD schemas in /openapi/v2 and /openapi/v3, for kubectl's validation;
//   - who is asking: client certificates and bearer tokens from a token file
//     (authn.go), with upstream's authenticators;
//   - who may: system:masters anything, everyone else what RBAC grants, from
//     Roles, ClusterRoles and bindings served by stand-in CRDs (authz.go), with
//     ClusterRole aggregation (aggregation.go);
//   - SelfSubjectAccessReview, SelfSubjectRulesReview and SelfSubjectReview
//     (kubectl auth can-i, whoami), answered by that authoriser (reviews.go).
//
// Requests reach these additions only after the server's own authentication
// and authorisation, because they are served by the delegation target.
package main

import (
	"errors"
	"net/http"
	"os"

	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	"k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	generatedopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/component-base/cli"

	"github.com/spf13/cobra"
)

func main() {
	ctx := genericapiserver.SetupSignalContext()
	o := options.NewCustomResourceDefinitionsServerOptions(os.Stdout, os.Stderr)
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "apiextensions-apiserver with discovery, namespaces and an events sink",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return o.ServerRunOptions.ComponentGlobalsRegistry.Set()
		},
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return run(c, o)
		},
	}
	cmd.SetContext(ctx)
	o.AddFlags(cmd.Flags())
	cmd.Flags().StringVar(&coreStorePath, "core-store", "",
		"file keeping the core objects (namespaces, events) across restarts (default: memory only)")
	cmd.Flags().StringVar(&tokenAuthFile, "token-auth-file", "",
		"static bearer tokens, as kube-apiserver's flag: CSV lines token,user,uid[,\"group1,group2\"]; "+
			"read again when it changes")
	cmd.Flags().StringVar(&bootstrapPolicyPath, "bootstrap-policy", "",
		"the default RBAC policy: ClusterRoles and ClusterRoleBindings (YAML) every cluster has")
	os.Exit(cli.Run(cmd))
}

var (
	// coreStorePath names the journal of the in-memory core objects, if any.
	coreStorePath string
	// tokenAuthFile names the bearer token file, if any.
	tokenAuthFile string
	// bootstrapPolicyPath names the default RBAC policy, if any.
	bootstrapPolicyPath string
)

func run(c *cobra.Command, o *options.CustomResourceDefinitionsServerOptions) error {
	config, err := o.Config()
	if err != nil {
		return err
	}
	namer := openapinamer.NewDefinitionNamer(apiserver.Scheme)
	defs := openapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(generatedopenapi.GetOpenAPIDefinitions)
	config.GenericConfig.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(defs, namer)
	config.GenericConfig.BuildHandlerChainFunc = func(api http.Handler, c *genericapiserver.Config) http.Handler {
		return genericapiserver.DefaultBuildHandlerChain(builtInBodies(api), c)
	}

	// Who is asking: replaces the stock delegating authenticator (which would ask a
	// TokenReview webhook and let anonymous requests through). Complete() adds the
	// loopback client's token in front of it.
	authn, err := newAuthenticator(config.GenericConfig.SecureServing, tokenAuthFile)
	if err != nil {
		return err
	}
	config.GenericConfig.Authentication.Authenticator = authn

	// Who may: system:masters anything, everyone else what RBAC grants (authz.go).
	// This replaces the stock delegating authoriser (a SubjectAccessReview webhook).
	if config.GenericConfig.LoopbackClientConfig == nil {
		return errors.New("no loopback client: the RBAC policy cannot be read")
	}
	defaults, err := loadDefaultPolicy(bootstrapPolicyPath)
	if err != nil {
		return err
	}
	rbac, err := newPolicy(config.GenericConfig.LoopbackClientConfig, defaults)
	if err != nil {
		return err
	}
	authz := newAuthorizer(rbac.authorizer)
	config.GenericConfig.Authorization.Authorizer = authz

	core := newCoreHandler()
	core.authorizer, core.rules = authz, rbac.authorizer
	if coreStorePath != "" {
		if err := core.openJournal(coreStorePath); err != nil {
			return err
		}
	}
	server, err := config.Complete().New(genericapiserver.NewEmptyDelegateWithCustomHandler(core))
	if err != nil {
		return err
	}
	core.crds = server.Informers.Apiextensions().V1().CustomResourceDefinitions().Lister()
	if err := rbac.install(server.GenericAPIServer, core.crds); err != nil {
		return err
	}
	return server.GenericAPIServer.PrepareRun().RunWithContext(c.Context())
}
