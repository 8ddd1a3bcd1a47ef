from app.core.images import parse_image
from app.core.plan import plan
from app.core.policy import parse_policy
from app.core.workloads import workload

ACR = "myacr.azurecr.io"


def pod(*images):
    containers = [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]
    return workload("", "Pod", {"metadata": {"name": "p"}, "spec": {"containers": containers}})


def test_acr_images_to_check_once_each_in_the_order_written():
    planned = plan(pod(f"{ACR}/b:1", "nginx:1", f"{ACR}/a:1", f"{ACR}/b:1"), parse_policy({}))
    assert planned.to_check == (parse_image(f"{ACR}/b:1"), parse_image(f"{ACR}/a:1"))
    assert [p.acr for p in planned.images] == [True, False, True, True]
    assert [p.container.name for p in planned.images] == ["c0", "c1", "c2", "c3"]


def test_invalid_missing_and_exempt_images_are_planned_but_not_checked():
    policy = parse_policy({"exemptions": {"images": [f"{ACR}/tools/*"]}})
    planned = plan(pod("UPPER/case:1", None, 7, f"{ACR}/tools/x:1"), policy)
    assert planned.to_check == ()
    assert [p.error for p in planned.images] == [
        planned.images[0].error,
        "image is missing",
        "not a string",
        None,
    ]
    assert planned.images[0].ref is None and planned.images[0].error
    assert [p.exempt for p in planned.images] == [False, False, False, True]


def test_the_plan_carries_the_workload_it_was_made_from():
    wl = pod(f"{ACR}/a:1")
    assert plan(wl, parse_policy({})).workload is wl
