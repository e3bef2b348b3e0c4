package runtime

import (
	"context"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
)

// Event is a change of a managed container that may need a pass.
type Event struct {
	// Action is Docker's: die, destroy, stop, health_status: unhealthy, ...
	Action string
	Object string
	Kind   string
	Name   string
	Time   time.Time
}

// Events streams die, destroy, start and health events of the lab's containers
// until ctx ends. When the stream breaks it is reopened after a pause;
// errors are sent to errs without blocking.
func (c *Client) Events(ctx context.Context, labName string, errs chan<- error) <-chan Event {
	out := make(chan Event, 64)
	f := filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("label", LabelManaged+"=true"),
		filters.Arg("label", LabelLab+"="+labName),
		filters.Arg("event", "die"),
		filters.Arg("event", "destroy"),
		filters.Arg("event", "start"),
		filters.Arg("event", "stop"),
		filters.Arg("event", "health_status"),
	)
	go func() {
		defer close(out)
		for ctx.Err() == nil {
			msgs, errc := c.api.Events(ctx, events.ListOptions{Filters: f})
		stream:
			for {
				select {
				case <-ctx.Done():
					return
				case err := <-errc:
					if ctx.Err() == nil && errs != nil {
						select {
						case errs <- err:
						default:
						}
					}
					break stream
				case m := <-msgs:
					e := Event{
						Action: string(m.Action),
						Object: m.Actor.Attributes[LabelObject],
						Kind:   m.Actor.Attributes[LabelKind],
						Name:   m.Actor.Attributes["name"],
						Time:   time.Unix(0, m.TimeNano),
					}
					select {
					case out <- e:
					default: // a full queue already holds a reason for a pass
					}
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(2 * time.Second):
			}
		}
	}()
	return out
}
