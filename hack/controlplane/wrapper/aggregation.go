// ClusterRole aggregation, as kube-controller-manager's clusterrole-aggregation
// controller does it: a ClusterRole with an aggregationRule gets, in .rules,
// the rules of every other ClusterRole its label selectors match (so the
// built-in admin, edit and view take in what roles labelled
// rbac.authorization.k8s.io/aggregate-to-admin|edit|view grant). The
// authoriser then reads .rules alone, as upstream's does.

package main

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	rbacinformers "k8s.io/client-go/informers/rbac/v1"
	rbacclient "k8s.io/client-go/kubernetes/typed/rbac/v1"
	rbaclisters "k8s.io/client-go/listers/rbac/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

type clusterRoleAggregator struct {
	client   rbacclient.ClusterRolesGetter
	lister   rbaclisters.ClusterRoleLister
	defaults *defaultPolicy // its built-in roles are aggregated too
	queue    workqueue.TypedRateLimitingInterface[string]
}

func newClusterRoleAggregator(client rbacclient.ClusterRolesGetter, informer rbacinformers.ClusterRoleInformer, defaults *defaultPolicy) *clusterRoleAggregator {
	c := &clusterRoleAggregator{
		client:   client,
		lister:   informer.Lister(),
		defaults: defaults,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "clusterrole-aggregation"},
		),
	}
	// Any ClusterRole change may change what any aggregated role takes in.
	_, _ = informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(interface{}) { c.enqueueAggregated() },
		UpdateFunc: func(interface{}, interface{}) { c.enqueueAggregated() },
		DeleteFunc: func(interface{}) { c.enqueueAggregated() },
	})
	return c
}

func (c *clusterRoleAggregator) enqueueAggregated() {
	roles, err := c.lister.List(labels.Everything())
	if err != nil {
		return
	}
	for _, role := range roles {
		if role.AggregationRule != nil {
			c.queue.Add(role.Name)
		}
	}
}

func (c *clusterRoleAggregator) run(ctx context.Context) {
	defer c.queue.ShutDown()
	go wait.UntilWithContext(ctx, func(context.Context) {
		for c.processNext(ctx) {
		}
	}, time.Second)
	<-ctx.Done()
}

func (c *clusterRoleAggregator) processNext(ctx context.Context) bool {
	name, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(name)
	if err := c.sync(ctx, name); err != nil {
		klog.Warningf("aggregating ClusterRole %q: %v (will retry)", name, err)
		c.queue.AddRateLimited(name)
		return true
	}
	c.queue.Forget(name)
	return true
}

// sync writes the aggregated rules of one ClusterRole, if they changed.
func (c *clusterRoleAggregator) sync(ctx context.Context, name string) error {
	role, err := c.lister.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if role.AggregationRule == nil {
		return nil
	}
	rules, err := c.aggregatedRules(role)
	if err != nil {
		// A selector that does not parse is the role's author's to fix; retrying
		// would not help.
		klog.Errorf("ClusterRole %q: aggregationRule refused: %v", name, err)
		return nil
	}
	if reflect.DeepEqual(rules, role.Rules) {
		return nil
	}
	updated := role.DeepCopy()
	updated.Rules = rules
	_, err = c.client.ClusterRoles().Update(ctx, updated, metav1.UpdateOptions{FieldManager: "clusterrole-aggregation-controller"})
	return err
}

// aggregatedRules are the rules of the ClusterRoles the selectors match (not
// the role itself; stored or built in), in name order, each rule once.
func (c *clusterRoleAggregator) aggregatedRules(role *rbacv1.ClusterRole) ([]rbacv1.PolicyRule, error) {
	matched := map[string]*rbacv1.ClusterRole{}
	for i := range role.AggregationRule.ClusterRoleSelectors {
		selector, err := metav1.LabelSelectorAsSelector(&role.AggregationRule.ClusterRoleSelectors[i])
		if err != nil {
			return nil, fmt.Errorf("clusterRoleSelectors[%d]: %w", i, err)
		}
		found, err := c.lister.List(selector)
		if err != nil {
			return nil, err
		}
		for _, other := range append(found, c.defaults.builtInMatching(selector)...) {
			if other.Name != role.Name {
				matched[other.Name] = other
			}
		}
	}
	names := make([]string, 0, len(matched))
	for name := range matched {
		names = append(names, name)
	}
	sort.Strings(names)
	var rules []rbacv1.PolicyRule
	for _, name := range names {
		for _, rule := range matched[name].Rules {
			if !containsRule(rules, rule) {
				rules = append(rules, rule)
			}
		}
	}
	return rules, nil
}

func containsRule(rules []rbacv1.PolicyRule, rule rbacv1.PolicyRule) bool {
	for _, r := range rules {
		if reflect.DeepEqual(r, rule) {
			return true
		}
	}
	return false
}
