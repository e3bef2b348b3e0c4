package forge

// PullJobForTest makes the request Plan takes.
func PullJobForTest(head string) pullJob { return pullJob{head: head} }
